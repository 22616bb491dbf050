"""canlib: the Collaborative Attention Network (Li et al., 2021) rebuilt from its parts.

One module per section of the paper:

* :mod:`canlib.backbone`  -- ResNet50 with a stride-1 layer 4 (Section 3.2.1)
* :mod:`canlib.pooling`   -- equation (1) and concatenated max/avg pooling (Section 3.2.2)
* :mod:`canlib.attention` -- collaborative attention (Section 3.2.2, Figure 3)
* :mod:`canlib.model`     -- branches, the shared embedding and the 16 features (Sections 3.2-3.2.3)
* :mod:`canlib.losses`    -- cross-entropy, batch-hard triplet and center loss (Section 3.3)
* :mod:`canlib.metrics`   -- CMC, mAP and mINP under the Market-1501 protocol (Section 4.1.4)
* :mod:`canlib.data`      -- dataset readers, the synthetic data set, PK sampling (Sections 4.1, 4.5)
"""

__version__ = "0.1.0"
