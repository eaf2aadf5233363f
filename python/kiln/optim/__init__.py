"""kn.optim: optimizers (fused C++ updates), gradient clipping, learning-rate schedules."""

from . import lr_scheduler
from .optimizers import SGD, Adagrad, Adam, AdamW, LBFGS, Optimizer, RMSprop, clip_grad_norm, clip_grad_value
