"""Methods compared in the paper's Table 1 (docs/method.md §9), each a real implementation (config ``method``)."""
