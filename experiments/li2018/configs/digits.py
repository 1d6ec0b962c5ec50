r"""Offline: a small EncapNet on the bundled digits.

  python -m experiments.li2018.main --config=experiments/li2018/configs/digits.py \
      --workdir=/tmp/encapnet_digits

The EncapNet of Table 4 narrowed (8 capsules per position, one type II layer
per module, three modules) on the UCI digits up-sampled to 16x16, with the
paper's loss (margin + 10 x Sinkhorn feedback) and Adam regime at a larger
rate for a short run. No paper number; this config checks the experiment end
to end anywhere (the feedback units make it slow on a CPU).
"""

from experiments.li2018.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.model.n_caps = 8
  c.model.cap_dims = (2, 4, 8)
  c.model.strides = (1, 2, 2)
  c.model.n_type2 = 1
  c.model.two_feedbacks = False
  c.data.name = "digits"
  del c.data["dir"]
  del c.data["train_split"]
  del c.data["test_split"]
  c.data.image_size = 16
  c.data.batch_size = 32
  c.optimiser.learning_rate = 1e-3
  c.schedule.boundary_epochs = (10, 15)
  c.eval.batch_size = 120
  c.train.num_steps = 20 * (1438 // 32)
  c.train.log_every = 25
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  return c
