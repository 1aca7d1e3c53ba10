"""The gRPC layer: servicers that convert proto <-> domain and nothing else."""
