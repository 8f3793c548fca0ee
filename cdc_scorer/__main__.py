from cdc_scorer.commands.cli import main

raise SystemExit(main())
