"""An initialisation that starts a new network as ``eps = x_t``, for short runs from scratch.

A noise-predicting network must, at high noise, return (almost) its input: ``x_t`` is nearly
all noise there. A freshly initialised UNet computes this identity through three random
linear maps (the 7x7 input convolution, the 1x1 residual convolution of the last block and
the 1x1 output convolution), and Adam, which moves each weight by about the learning rate
per step, needs thousands of steps to grow them into an identity. Until then the sampler's
first steps, which set the colours of the whole image, get nothing useful.

:func:`identity_skip_init` writes that identity into the network's existing skip path (no
new layers, the checkpoint format is unchanged): the input convolution copies the input
channels, the last block's residual convolution passes the skip on, and the output
convolution returns it, while the last block's own branch and the upsampling path start at
zero (a zero gain in the final group norm and zero weights on the path from the decoder;
both receive gradients from the first step, as in zero-initialised residual branches).
The network then starts exact at high noise and learns the denoising correction.

It needs ``dim >= channels`` (every input channel gets a feature channel). It applies to
training from scratch only, and is off by default (the official code uses PyTorch's default
initialisation); the demo models use it.
"""

from __future__ import annotations

import torch

from ..errors import TrainingError


@torch.no_grad()
def identity_skip_init(unet: torch.nn.Module) -> torch.nn.Module:
    """Make ``unet`` (an ImageUNet or MaskUNet) output its input; returns it."""
    channels, dim = unet.channels, unet.config.dim
    if dim < channels:
        raise TrainingError(
            f"identity initialisation needs the network width (dim {dim}) to be at least its input channels "
            f"({channels}); use a larger --dim or train without it"
        )
    eye = torch.eye(channels)
    centre = unet.init_conv.kernel_size[0] // 2
    unet.init_conv.weight[:channels].zero_()
    unet.init_conv.weight[:channels, :channels, centre, centre] = eye  # a cascade's condition channels: 0
    unet.init_conv.bias[:channels].zero_()
    final = unet.final_res_block
    if not isinstance(final.res_conv, torch.nn.Conv2d):
        raise TrainingError("the network's last block has no residual convolution to carry the identity")
    final.res_conv.weight.zero_()  # inputs: [decoder output (dim) | skip r (dim)]
    final.res_conv.weight[:channels, dim : dim + channels, 0, 0] = eye
    final.res_conv.bias.zero_()
    final.block2.norm.weight.zero_()  # the block's own branch starts at zero
    unet.final_conv.weight.zero_()
    unet.final_conv.weight[:, :channels, 0, 0] = eye
    unet.final_conv.bias.zero_()
    return unet
