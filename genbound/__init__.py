"""genbound: which fine-tuning method generalizes, and why.

Reference training of the paper's eleven fine-tuning methods (full FT, LoRA and its variants, the sparse
cLA family and PaCA) and of VeRA, PiSSA and DoRA, the generalization bounds of "Beyond LoRA: Is
Sparsity-Induced Adaptation Better?" (arXiv 2606.13767) and tighter data-dependent ones, and empirical
diagnostics from checkpoints.
"""

__version__ = "0.1.0"
