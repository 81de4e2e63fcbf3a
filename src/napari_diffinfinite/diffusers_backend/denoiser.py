"""The diffusers network on batches of patches, and classifier-free guidance composited by the layout.

:class:`DiffusersNetwork` is the module the sampler calls: for rows of (noisy patch, timestep,
prompt row, label patch) it looks up the text embedding, runs the ControlNet on the patch's
conditioning image (when there is one) and the UNet with the ControlNet's residuals, as
diffusers' ``StableDiffusionControlNetPipeline`` does.

:class:`DiffusersDenoiser` plugs into :class:`~napari_diffinfinite.sampling.guidance.GuidedDenoiser`
(batching, chunking, OOM retry, autocast are the parent's). Per patch it runs the negative
prompt once (when guided) and each prompt whose classes occur in the patch once; every pixel
takes the prediction of its own class's prompt: ``uncond + g * (cond_own - uncond)``, the way
DiffInfinite composites labels. With one prompt this is diffusers' guidance exactly
(``guidance_scale`` g = omega + 1; as in diffusers there is no unconditional pass when g <= 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..sampling.guidance import EvalPlan, GuidedDenoiser, _plan, take_rows
from .conditioning import LayoutConditioning


class DiffusersNetwork(nn.Module):
    """UNet (+ ControlNet) of a diffusers pipeline, called as ``network(x, t, prompt_rows, labels)``."""

    def __init__(
        self,
        unet: nn.Module,
        controlnet: nn.Module | None = None,
        conditioning: LayoutConditioning | None = None,
        controlnet_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.conditioning = conditioning
        self.controlnet_scale = float(controlnet_scale)
        self.register_buffer("embeddings", torch.zeros(1, 1, 1), persistent=False)

    def set_embeddings(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings.to(next(self.unet.parameters()).device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        context = self.embeddings.index_select(0, prompts.long()).to(dtype)
        x = x.to(dtype)
        residuals = {}
        if self.controlnet is not None:
            image = self.conditioning.render(labels, dtype)
            down, mid = self.controlnet(
                x, t, encoder_hidden_states=context, controlnet_cond=image,
                conditioning_scale=self.controlnet_scale, return_dict=False,
            )  # fmt: skip
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False, **residuals)[0]


class DiffusersDenoiser(GuidedDenoiser):
    """Guided model output for patches whose pixels take their class's prompt.

    ``prompt_of_label`` (256,) gives each label's prompt row; ``negative_row`` the negative
    prompt's row of the network's embedding table.
    """

    def __init__(self, unet: nn.Module, omega: float, *args, prompt_of_label: np.ndarray, negative_row: int,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(unet, omega, *args, **kwargs)
        self.prompt_of_label = np.asarray(prompt_of_label, np.int64)
        self.prompt_map = torch.from_numpy(self.prompt_of_label).to(self.device)
        self.negative_row = int(negative_row)
        self.num_prompts = int(self.prompt_of_label.max()) + 1

    @property
    def guided(self) -> bool:
        return self.scale > 1.0

    def plan(self, present: np.ndarray) -> EvalPlan:
        """Per patch: the negative prompt (when guided), then each prompt whose classes occur."""
        onehot = np.zeros((present.shape[1], self.num_prompts), bool)
        onehot[np.arange(present.shape[1]), self.prompt_of_label[: present.shape[1]]] = True
        prompts_present = (present.astype(np.int64) @ onehot.astype(np.int64)) > 0
        rows = []
        for found in prompts_present:
            patch = [(0, True)] if self.guided else []
            patch += [(int(p), False) for p in np.flatnonzero(found)]
            rows.append(patch)
        return _plan(rows)

    def _guide(self, x: torch.Tensor, t: int, labels: torch.Tensor, plan: EvalPlan) -> torch.Tensor:
        row_patch = plan.tensor("row_patch", x.device)
        row_prompt = plan.tensor("row_label", x.device)
        row_null = plan.tensor("row_null", x.device)
        null_row = plan.tensor("null_row", x.device)
        cond_rows = plan.tensor("cond_rows", x.device)
        row_labels = take_rows(labels, row_patch)  # (E, p, p)
        prompts = torch.where(row_null, self.negative_row, row_prompt)
        times = torch.full((plan.rows,), t, dtype=torch.long, device=x.device)
        out = self._forward(take_rows(x, row_patch), times, prompts, row_labels).contiguous()

        cond = take_rows(out, cond_rows)
        cond_patch = row_patch.index_select(0, cond_rows)
        pixel_prompt = self.prompt_map.to(x.device)[take_rows(row_labels, cond_rows).long()]
        own = (pixel_prompt == row_prompt.index_select(0, cond_rows)[:, None, None])[:, None]
        if self.guided:
            null = take_rows(out, null_row)  # (B, C, p, p): each patch's negative-prompt prediction
            cond.sub_(take_rows(null, cond_patch)).mul_(own)
            composed = torch.zeros_like(null).index_add_(0, cond_patch, cond)
            return composed.mul_(self.scale).add_(null)
        composed = out.new_zeros((x.shape[0], *out.shape[1:]))
        return composed.index_add_(0, cond_patch, cond.mul_(own))
