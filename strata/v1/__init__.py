"""Generated gRPC stubs of the strata.v1 contract (proto/strata/v1). Do not edit:
run `python proto/generate.py` after changing a .proto file."""
