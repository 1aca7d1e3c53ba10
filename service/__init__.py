"""simrating: a gRPC rating service for IoT SIM connectivity."""
