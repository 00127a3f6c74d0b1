"""What every generator benchmark row shares: the texts it speaks, each model's dtype, how a value is printed."""

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away."
TEXTS = [
    TEXT,
    "Hello there, how are you today?",
    "Streaming speech, one frame at a time.",
    "A fourth request.",
    "Numbers: one, two, three, four.",
    "The sixth voice speaks.",
    "Seven is a lucky number.",
    "Eight, finally.",
]
DTYPES = {"tiny-random": "float32", "csm-1b-random": "bfloat16"}


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)
