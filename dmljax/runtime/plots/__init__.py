"""Figures of a trained embedding, as PNG files.

retrieval.py  queries beside their nearest neighbours, framed right / wrong
              (Wu et al., Fig. 5)
tsne.py       a t-SNE map of a sample of classes, coloured by class

They draw on a matplotlib `Figure` with its own Agg canvas, never through
pyplot, so they neither switch nor depend on the caller's backend.
"""
