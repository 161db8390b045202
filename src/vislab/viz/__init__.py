"""Figures and tables: architecture summary, t-SNE, mask progression."""
