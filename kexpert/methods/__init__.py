"""Methods compared in the paper's Table 1 (METHOD.md §9), each a real implementation (config group ``method``)."""
