"""The distributed mode: each stage as its own process, consuming and producing on the bus and serving its gRPC API."""
