"""What each command runs, one module per command: :mod:`~medvill.recipes.pretrain`
(``medvill pretrain``), :mod:`~medvill.recipes.finetune` (``medvill finetune``),
:mod:`~medvill.recipes.evaluate` (``medvill evaluate``), :mod:`~medvill.recipes.compare`
(``medvill compare``), :mod:`~medvill.recipes.demo` (``medvill demo``); what they share:
:mod:`~medvill.recipes.common` (a new model's tokenizer and configuration) and
:mod:`~medvill.recipes.output` (one output folder, one run)."""
