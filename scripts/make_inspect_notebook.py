"""Write notebooks/03-inspect.ipynb (without outputs) from the cell list below.

    python scripts/make_inspect_notebook.py
"""
from __future__ import annotations

from pathlib import Path

import nbformat as nbf

OUT = Path(__file__).resolve().parent.parent / "notebooks" / "03-inspect.ipynb"

CELLS = [
    ("md", "# Deep neural inspection: which units track a hypothesis?\n\n"
           "`everest_magic.inspect` scores every unit of one or more layers against human hypotheses "
           "(labels, functions of the input, concept masks, token annotations) with several measures, in one "
           "streaming pass over shuffled batches that stops as soon as the answer is statistically settled "
           "(DeepBase, SIGMOD 2019). The result is a long DataFrame with a confidence interval per score.\n\n"
           "First the quickstart CNN on a 6,000-image subset of the real MNIST, then MiniLM on 1,000 "
           "sentences of Python's documentation."),
    ("code", "import json, time\nimport numpy as np\nimport torch\nimport everest_magic as em\n"
             "from everest_magic import examples as ex\n"
             "from everest_magic.inspect import inspect, ranked, detectors, library as lib\n\n"
             "torch.manual_seed(0)\nt = time.time()\nmodel, images, labels = ex.trained_mnist_cnn(cache='mnist_cnn.pt')\n"
             "images, labels = images[:6000], labels[:6000]\n"
             "s = em.Session(model, images, labels=labels, batch_size=250)\n"
             "print(f'model ready in {time.time() - t:.0f} s; {s.n} images')"),
    ("md", "## Digit class and amount of ink\n\n"
           "`\"class\"` is the session's labels (AUROC per digit, one vs rest, and a linear probe on the whole "
           "layer); `\"ink\"` is the fraction of bright pixels (Pearson correlation). Early stopping: once every "
           "95% confidence interval is narrower than `epsilon`, or the top units stop changing."),
    ("code", "t = time.time()\n"
             "df = inspect(s, ['conv2:mean', 'conv3:mean', 'fc1'], {'class': 'class', 'ink': 'ink'},\n"
             "             measures=['pearson', 'auroc', 'probe'], epsilon=0.1)\n"
             "st = df.attrs['inspect']\n"
             "print(f'{len(df)} scores in {time.time() - t:.1f} s from {st.inputs_seen} of {st.inputs_available} images '\n"
             "      f'(stopped: {st.stop_reason})')\n"
             "cols = ['layer', 'unit', 'label', 'score', 'ci_low', 'ci_high']\n"
             "print(ranked(df, 'ink', 'pearson', n=3)[cols].to_string(index=False))"),
    ("code", "best = ranked(df, 'class', 'auroc').sort_values('score', ascending=False)\n"
             "print('units that best pick out one digit (AUROC, one vs rest):')\n"
             "print(best.drop_duplicates('label').head(10)[cols].to_string(index=False))\n"
             "print()\nprint('linear probes of the whole layer (held-out accuracy, majority baseline, selectivity):')\n"
             "print(df[df.unit == -1].pivot(index='layer', columns='measure', values='score').round(3).to_string())"),
    ("md", "## Concept masks (Network Dissection)\n\n"
           "Per-pixel masks of the ink and of the stroke outline. Each channel's map is resized to the 28x28 mask; "
           "it is *on* where it exceeds its top-0.5% activation level; IoU with the concept. A unit with "
           "IoU >= 0.04 is a detector of the concept."),
    ("code", "t = time.time()\n"
             "masks = inspect(s, ['conv1', 'conv2'], {'ink': 'ink_mask', 'outline': 'edge_mask'}, measures='iou',\n"
             "                max_inputs=1500)\n"
             "print(f'{len(masks)} IoU scores in {time.time() - t:.1f} s')\n"
             "det = detectors(masks)\n"
             "print(det.groupby(['layer', 'hypothesis']).size().rename('detectors').to_string())\n"
             "print(det.head(6)[['layer', 'unit', 'hypothesis', 'score']].to_string(index=False))"),
    ("md", "## Browse the ranking\n\nOne tab per hypothesis; click a unit to open its top-k gallery."),
    ("code", "from everest_magic.widgets.inspect_table import InspectTable\ntable = InspectTable(df, s)\ntable"),
    ("md", "## Text: MiniLM's FFN units against token annotations\n\n"
           "Token hypotheses flag the tokens the model reads: inside quotes, code-like words (dotted names, "
           "`f()`, snake_case), inside brackets, the keyword *return*, and the token's position. They need the "
           "tokenizer the collate function uses, to align characters with tokens."),
    ("code", "model_t, tok, collate = ex.minilm(max_length=48)\nsentences = ex.python_sentences(limit=1000)\n"
             "ts = em.Session(model_t, sentences, collate=collate, batch_size=50, name='minilm')\n"
             "t = time.time()\n"
             "text = inspect(ts, 'encoder.layer.2.intermediate',\n"
             "               {'quotes': 'quotes', 'code': 'code', 'brackets': 'brackets', 'return': 'keyword:return',\n"
             "                'position': 'position'},\n"
             "               measures=['pearson', 'auroc'], tokenizer=tok, epsilon=0.1)\n"
             "tst = text.attrs['inspect']\n"
             "print(f'{len(text)} scores in {time.time() - t:.1f} s from {tst.inputs_seen} sentences (stopped: {tst.stop_reason})')\n"
             "for h, m in [('quotes', 'auroc'), ('code', 'auroc'), ('brackets', 'auroc'), ('return', 'auroc'), ('position', 'pearson')]:\n"
             "    r = ranked(text, h, m).iloc[0]\n"
             "    print(f'{h:9s} {m:8s} best unit {r.unit:5d}: {r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]')"),
    ("md", "## Summary (checked by the tests)"),
    ("code", "def best(frame, h, m, key=lambda v: v):\n"
             "    f = frame[(frame.hypothesis == h) & (frame.measure == m) & (frame.unit >= 0)]\n"
             "    return float(f.score.map(key).max())\n\n"
             "summary = {\n"
             "    'mnist_inputs': int(s.n), 'mnist_inputs_seen': int(st.inputs_seen),\n"
             "    'mnist_class_probe': float(df[(df.layer == 'fc1') & (df.measure == 'probe')].score.iloc[0]),\n"
             "    'mnist_class_best_auroc': best(df, 'class', 'auroc'),\n"
             "    'mnist_ink_best_abs_r': best(df, 'ink', 'pearson', abs),\n"
             "    'mnist_ink_detectors': int(((det.hypothesis == 'ink')).sum()),\n"
             "    'text_inputs_seen': int(tst.inputs_seen),\n"
             "    'text_quotes_best_auroc': best(text, 'quotes', 'auroc', lambda v: max(v, 1 - v)),\n"
             "    'text_code_best_auroc': best(text, 'code', 'auroc', lambda v: max(v, 1 - v)),\n"
             "    'text_position_best_abs_r': best(text, 'position', 'pearson', abs),\n"
             "}\nprint('SUMMARY', json.dumps(summary))"),
]


def build() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in CELLS]
    return nb


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    nbf.write(build(), OUT)
    print("wrote", OUT)
