"""``genbound export CKPT --peft OUT``: a genbound checkpoint as a Hugging Face peft LoRA adapter."""

from __future__ import annotations

from .common import add_json, print_json
from .dataopts import add_relocation_options

HELP = "write a genbound checkpoint as a peft LoRA adapter (peft loads it; genbound reads it back as its method)"
DESCRIPTION = (
    "Write CKPT's update dW = s B A of every adapted layer as a peft LoRA adapter folder (adapter_config.json + "
    "adapter_model.safetensors) with the trained head as modules_to_save: chains as their concatenated factors, "
    "column selectors as one-hot A, PaCA as its column update. The method and its data-dependent count are "
    "recorded in adapter_config.json under 'genbound'."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a genbound checkpoint directory")
    p.add_argument("--peft", required=True, metavar="OUT", help="the peft adapter folder to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier genbound export at OUT (never a folder holding anything else)")
    add_relocation_options(p)
    add_json(p)


def run(args) -> int:
    from ..sources.export import export_peft

    config = export_peft(args.checkpoint, args.peft, overwrite=args.overwrite, backbone=args.backbone,
                         dataset=args.dataset)
    if args.json:
        print_json({"source": args.checkpoint, "adapter": args.peft, "config": config})
        return 0
    g = config["genbound"]
    print(f"wrote peft LoRA adapter {args.peft}: method {g['method']} as r = {config['r']}, lora_alpha = "
          f"{config['lora_alpha']:g} on {len(config['target_modules'])} module name(s), modules_to_save "
          f"{config['modules_to_save']}; data-dependent parameters D = {g['data_dependent']:,}")
    return 0
