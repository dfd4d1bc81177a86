from endpoint_agent.cli import main

raise SystemExit(main())
