"""Li et al. (ECCV 2018): Neural Network Encapsulation (EncapNet)."""
