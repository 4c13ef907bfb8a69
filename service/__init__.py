"""dermserve's serving side: validation, preprocessing and the model-version contract (grpc-free),
plus the gRPC front service built on top of them."""
