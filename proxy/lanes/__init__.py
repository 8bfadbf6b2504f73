"""The three plans' routing policy: model-ID routing, per-lane targets, the Budget pool and the scrub rules."""
