r"""The paper's model trained on HowTo100M, evaluated zero-shot on YouCook2 and
MSR-VTT (text-to-video and text-to-video+audio retrieval).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/howto100m.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_ht100m

One training run gives these rows of the paper (R@1 / R@5 / R@10 / MedR):

  Table 1 "Ours VT,  R152+RX101" (eval key t2v):
      YouCook2  9.0 / 23.2 / 32.5 / 30    MSR-VTT 9.7 / 23.2 / 30.7 / 32
  Table 1 "Ours VAT, R152+RX101" (eval key t2va), = Table 6 "Shared":
      YouCook2 19.3 / 37.8 / 47.3 / 13    MSR-VTT 9.6 / 22.6 / 32.0 / 32
  Table 5 "Ours" (t2va; its MSR-VTT row differs slightly from Table 1's):
      YouCook2 19.3 / 37.8 / 47.3 / 13    MSR-VTT 9.3 / 21.4 / 30.9 / 37
  Table 4 "C = 128": YouCook2 R@1 19.3, R@10 47.3; MSR-VTT 9.3, 30.9;
      15.97 GB, 0.879 s per batch.

``data.dir`` holds the features in capsjax's on-disk format
(``capsjax.data.multimodal``; the README's "Reproducing" section gives the
convert command): ``howto100m/train``, ``youcook2/val``, ``msrvtt/test``.
Without them the run stops with one error naming what to obtain. Paper
(Sec. 4.1): 4 V100 GPUs, 20 epochs, batch 4096; time not stated.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Sec. 4.1) --------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # "capsules" (the paper), or Table 5's baselines "fc" / "self_attention".
  c.model.architecture = "capsules"
  c.model.n_caps = 128          # "number of capsules to C = 128"
  c.model.d1 = 32               # primary pose size d1 = 32
  c.model.d2 = 256              # secondary pose size d2 = 256
  c.model.d_embed = 4096        # joint representation D = 4096
  c.model.d_hidden = 1024       # App. B: the routing MLP's hidden width
  c.model.routing = "self_attention"  # Sec. 3.2
  c.model.shared = True         # Table 6 "Shared"
  # Eq. (3) f_out(p̂_i x_i): "secondary" reads x_i as the routed poses x̂_i
  # (capsjax.models.duarte2021's choice), "primary" as written.
  c.model.pool = "secondary"
  # Sec. 3.1: h_K, h_Q, h_V learned "using two linear layers for all
  # functions h": linear layers per map (2; 1 = one affine map), the width
  # between them (None: d2) and the nonlinearity there (None, as printed, or
  # "relu"); see capsjax.routing.self_attention_routing.
  c.model.qkv_layers = 2
  c.model.qkv_hidden = ml_collections.config_dict.placeholder(int)
  c.model.qkv_activation = ml_collections.config_dict.placeholder(str)
  # Sec. 4.1: 4096-d video (R152 + RX101), word2vec text (300), DAVEnet audio
  # (1024: its output channels, mean-pooled; see capsjax.models.duarte2021).
  c.model.input_dims = ml_collections.ConfigDict(
      {"video": 4096, "audio": 1024, "text": 300})

  # --- loss ----------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 0.001         # Sec. 4.1: MMS delta = 0.001

  # --- data ----------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "howto100m"
  c.data.dir = ""               # root of the converted feature directories
  c.data.split = "train"
  c.data.batch_size = 4096      # Sec. 4.1: batch size of 4096

  # --- optimiser (Sec. 4.1: Adam, lr 0.001, cosine schedule) ---------------------
  c.optimiser = ml_collections.ConfigDict()
  c.optimiser.learning_rate = 1e-3

  # --- schedule ------------------------------------------------------------------
  num_epochs = 20               # Sec. 4.1: 20 epochs
  # Sec. 4.1 gives 1.2M videos, not the number of clips; an epoch here is
  # 1.2M samples (override train.num_steps for the clip count of your copy).
  steps_per_epoch = 1_200_000 // 4096
  c.schedule = ml_collections.ConfigDict()
  c.schedule.final_fraction = 0.0  # plain cosine decay to 0

  # --- eval (Sec. 4.2: zero-shot, YouCook2 val 3.5k clips, MSR-VTT 1k test) ----
  c.eval = ml_collections.ConfigDict()
  # "dataset/split" directories under data.dir, each evaluated separately.
  c.eval.retrieval = ("youcook2/val", "msrvtt/test")
  c.eval.batch_size = 512       # embedding batch; does not change the metrics

  # --- loop ------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = num_epochs * steps_per_epoch
  c.train.seed = 0
  c.train.log_every = 50
  c.train.eval_every = steps_per_epoch
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.progress = True
  return c
