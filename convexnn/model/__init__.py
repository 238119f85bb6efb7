"""The mathematics of eq. 1-5: patches, sign patterns, the gated network, losses, the
problem a solver receives, the primal network, the certified Lipschitz bound."""
