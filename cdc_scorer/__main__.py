from cdc_scorer.cli import main

raise SystemExit(main())
