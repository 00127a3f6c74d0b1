"""What both planes share: dependency-free modules that `deploy/` (the operator's machine) and `csm_runtime/` (the
box) import alike, so the two sides never disagree. Nothing here imports either plane, torch, fabric or vastai."""
