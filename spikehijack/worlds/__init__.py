"""The worlds and their data: the synthetic concept world and its encoder, the HPO ontology, the MiniLM and
ColQwen encoders, and the real retrieval tasks built from them."""
