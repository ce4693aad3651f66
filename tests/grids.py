"""Small grid files for the tests (smoke profile: each runs in seconds)."""

TINY_GRID = """
[lr]
head = 5e-3
lora = 3e-3
residual = 3e-3

[[cell]]
name = "head"
method = "head"
policy = "head"

[[cell]]
name = "lora-{placement}"
method = "lora"
placement = ["proj", "conv3"]
rank = 2
policy = "lora"

[[cell]]
name = "seed-post"
method = "residual"
placement = "post-proj"
rank = 8
alpha = 1.0
policy = "conv2"
"""

# The tiny grid with three slower conv placements instead of proj and conv3, so that a worker is
# reliably caught inside a cell.
SLOW_GRID = TINY_GRID.replace(
    'placement = ["proj", "conv3"]', 'placement = ["conv3", "conv2", "convs"]\nshape = "kxk"'
)

# Two cells for the reporting tests: the linear probe and LoRA r8 on proj.
REPORT_GRID = """
[lr]
head = 5e-3
lora = 3e-3

[[cell]]
name = "head"
method = "head"
policy = "head"

[[cell]]
name = "lora-proj"
method = "lora"
placement = "proj"
rank = 8
policy = "lora"
"""

# The report grid with a tuning stage on the smoke profile (4 designed candidates per configuration).
TUNED_GRID = "[tune]\ncandidates = 4\n" + REPORT_GRID
