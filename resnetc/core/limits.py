"""Bounds on what a spec may ask for, checked before the work they bound is done."""

MAX_REPEAT = 10_000  # blocks in one stage
MAX_PARAMETERS = 4_000_000_000  # checked before any weight exists
MAX_NODES = 200_000  # operations in the whole graph: bounds memory and time before anything is built
MAX_LAYERS = 2_048  # layers written in one block or model body (timm's largest ResNets: under 20 per block)
MAX_BLOCK_NESTING = 32  # blocks inside blocks, through submodules and stages (real models: 3 or 4)
MAX_OUTPUTS = 64  # a backbone's features (timm's: 5 at most)
FLOAT32_MAX = 3.4028234663852886e38  # a float attribute or constant beyond it is infinite in the graph
MAX_DIM = 2**31 - 1  # one dimension of one tensor (a sample's channels, height or width)
# A protobuf message cannot exceed 2 GiB, and ONNX weights are written inline: room is left for the graph.
MAX_INLINE_WEIGHT_BYTES = 2**31 - 2**26
