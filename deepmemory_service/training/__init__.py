"""Deep Memory models: the trainer interface, the local trainer (a residual adapter fitted with
numpy, judged on held-out queries) and Activeloop's cloud trainer."""
