"""The names of the models' training choices, for modules that must not load Keras.

:class:`clci_keras.training.TrainConfig` checks its values against these, and
``clci-keras train`` offers them as ``choices``; :mod:`clci_keras.models.losses`
and :mod:`clci_keras.models.layers` (which load Keras) implement them.
"""

#: Loss names (:data:`clci_keras.models.losses.LOSS_FUNCTIONS`): CLCI-Net's Dice loss, and
#: X-Net's binary cross-entropy + Dice.
LOSSES = ("dice", "bce_dice")

#: ``moving_update`` values of :class:`clci_keras.models.layers.BatchNormalization`: ``keras2``
#: (Keras 2.2.4 / TF 1: Bessel-corrected, zero-debiased; the original code's) or ``keras3``
#: (``keras.layers.BatchNormalization``'s).
BN_UPDATES = ("keras2", "keras3")
