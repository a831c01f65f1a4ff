"""The report of the comparison, by job: ``tables`` (and ``axes``, ``weights``) compute from rows,
``figures`` draws, ``text`` writes the sentences, ``sections`` turns them into one ``Section`` per
view, ``page`` assembles the self-contained HTML, ``wandb_report`` logs the same sections to the W&B
comparison run, and ``build`` writes ``results/`` from the evaluate stage's records."""
