"""Training: the multi-step teacher and the students distilled from it (docs/distillation.md).

Where each paper idea lives:

- ``data.py``: videos -> latent/audio shards, clip sampling, EFT's clip pairs (OSA-LCM sec. 4.2)
- ``losses.py``: pseudo-Huber (OSA-LCM eq. 3), GAN losses (eqs. 4-5), motion loss (eqs. 7-8),
  the mixed-supervision weight W(R) (FADA eq. 8)
- ``discriminator.py``: the avatar discriminator on the teacher's temporal features (OSA-LCM eq. 4)
- ``conditioning.py``: conditions from a batch, noising, the teacher's DDIM step (shared)
- ``teacher.py``: the teacher's denoising loss (FADA eq. 1)
- ``osa_lcm.py``: Adv-LCM and EFT (OSA-LCM Algorithms 1-2)
- ``fada.py``: mixed-supervised PeRFlow distillation with CFG tokens (FADA eqs. 2-10)
- ``trainer.py``: the loop on Hugging Face accelerate (checkpoints, resume, metrics)
- ``recipes.py``: ``train_teacher``, ``distill_osa_lcm``, ``distill_fada``
"""

from .recipes import distill_fada, distill_osa_lcm, train_teacher
from .trainer import TrainConfig

__all__ = ["TrainConfig", "distill_fada", "distill_osa_lcm", "train_teacher"]
