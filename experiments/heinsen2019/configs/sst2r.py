r"""Tab. 4: SST-2/R, 95.6 % test accuracy (root sentences, neutral removed).

  python -m experiments.heinsen2019.main \
      --config=experiments/heinsen2019/configs/sst2r.py \
      --config.data.dir=/data/sst/gpt2-large --workdir=/tmp/heinsen_sst2r

"Changing only the final number of capsules to two" (Sec. 5.4): the SST-5/R
config with two classes and the binary label set of the same embeddings
(one ``capsjax.data.sst_embed`` run serves both). Training phrases: the
unique training phrases with a non-neutral label; dev / test: the 872 /
1,821 non-neutral root sentences. 138,944 parameters. Hardware and time:
as ``sst5r.py`` (fewer training phrases: neutral ones are dropped).
"""

from experiments.heinsen2019.configs import sst5r


def get_config():
  c = sst5r.get_config()
  c.model.n_classes = 2         # Sec. 5.4: two output capsules
  c.data.task = "sst2"          # labels 0, 1 -> 0; 3, 4 -> 1; 2 dropped
  return c
