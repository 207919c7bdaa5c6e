from iotstream.cli.main import main

raise SystemExit(main())
