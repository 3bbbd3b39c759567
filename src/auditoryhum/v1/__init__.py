"""Generated protobuf/gRPC code for the `auditoryhum.v1` contracts (`make proto`; never edited by hand)."""
