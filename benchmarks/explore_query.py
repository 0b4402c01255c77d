"""How long one `safeclip explore` query takes on the CPU with ViT-L/14-sized encoders and a 10k-item gallery.

    python benchmarks/explore_query.py [--gallery 10000] [--repeats 5] [--size vit-l-14|tiny]

A randomly initialised CLIP of the chosen size (nothing is downloaded; the time does not depend on the weights)
answers a text query against 10k gallery images and an image query against 10k gallery captions through the
explore engine's own code path (`Explorer.search_text` / `search_image`); the gallery embeddings are random unit
vectors, as a cache hit would give them. Prints the fastest and the median time of each query kind, the share
spent scanning the gallery, and process CPU time (on a shared machine CPU time < threads x wall time means
the process waited for a core).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from safeclip.explore.gallery import Gallery, GalleryEmbeddings, GalleryItem
from safeclip.explore.search import Explorer, ranked
from safeclip.models.clip import bundle_from_clip_model, tiny_image_processor

SIZES = {  # CLIPConfig text / vision settings
    "vit-l-14": ({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
                 {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "image_size": 224, "patch_size": 14}, 768),
    "tiny": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
             {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}, 32),
}


def random_bundle(size: str):
    from transformers import CLIPConfig, CLIPModel

    from safeclip.models.tokenizer import train_clip_tokenizer

    text, vision, dim = SIZES[size]
    tokenizer = train_clip_tokenizer(["a red circle covered in blood on a teal background"] * 4, vocab_size=300,
                                     model_max_length=77)
    config = CLIPConfig(text_config={**text, "vocab_size": len(tokenizer),
                                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                     "pad_token_id": tokenizer.pad_token_id, "max_position_embeddings": 77, "projection_dim": dim},
                        vision_config={**vision, "projection_dim": dim}, projection_dim=dim)
    torch.manual_seed(0)
    return bundle_from_clip_model(CLIPModel(config), tokenizer, tiny_image_processor(vision["image_size"]), name=size)


def timed(fn, repeats: int) -> tuple[list[float], float]:
    fn()  # warm up
    walls, cpu = [], time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - started)
    return walls, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=10_000, help="gallery images and captions (each)")
    parser.add_argument("--repeats", type=int, default=5, help="timed queries of each kind")
    parser.add_argument("--size", default="vit-l-14", choices=sorted(SIZES), help="encoder size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = random_bundle(args.size)
    dim = SIZES[args.size][2]
    n = args.gallery
    explorer = Explorer({"model": "(in memory)"}, "(in memory)", "(unused)")
    explorer.gallery = Gallery("random", [GalleryItem(f"{i}.png", "safe", str(i)) for i in range(n)],
                               [GalleryItem(f"caption {i}", "safe", str(i)) for i in range(n)])
    state = explorer.states["model"]
    unit = torch.nn.functional.normalize
    state.bundle, state.state = bundle, "ready"
    state.embeddings = GalleryEmbeddings(unit(torch.randn(n, dim), dim=-1), unit(torch.randn(n, dim), dim=-1))
    image = Image.new("RGB", (640, 480), (200, 30, 30))
    q = unit(torch.randn(dim), dim=-1)
    rows = [("text query -> 10k images", lambda: explorer.search_text("a red circle covered in blood", k=8)),
            ("image query -> 10k captions", lambda: explorer.search_image(image, k=8)),
            ("gallery scan alone (top-8 of 10k)", lambda: ranked(state.embeddings.images, q, explorer.gallery.images, 8,
                                                                   with_text=False))]
    print(f"{args.size} encoders, gallery {n} images + {n} captions, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} timed queries each")
    print("| query | fastest (s) | median (s) | CPU time (s) |\n|---|---:|---:|---:|")
    for name, fn in rows:
        walls, cpu = timed(fn, args.repeats)
        print(f"| {name} | {min(walls):.3f} | {statistics.median(walls):.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
