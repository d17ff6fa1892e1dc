"""The names an exported graph gives its tensors and dynamic dims, below both the exporter (export/onnx.py writes
them) and the runners (which feed and pin them), so that neither imports the other for a string."""

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# The names of the dynamic input dims in the exported graph (the dynamo exporter writes the
# ``Dim`` names as dim_param); ONNX Runtime's free-dimension overrides pin them by these names.
BATCH_DIM, HEIGHT_DIM, WIDTH_DIM = "batch", "height", "width"
