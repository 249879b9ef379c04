"""Online metric learning for Keras 3: mined losses, embedding networks, retrieval evaluation."""
