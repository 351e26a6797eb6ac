"""The certificate's default settings, in a module that imports nothing, so that ``genbound certify --help``
quotes them without importing torch (genbound.bounds.certificate uses the same names)."""

DEFAULT_LEVELS = 5
DEFAULT_QAT_STEPS = 30
DEFAULT_QAT_LR = 0.01
DEFAULT_RATE = 0.0  # entropy-constrained assignment: penalty = rate * mean(w^2) per bit
DEFAULT_POSTERIOR_STEPS = 0  # data-dependent centre: no posterior training after it (genbound.bounds.ddprior)
DEFAULT_POSTERIOR_LR = 0.01
