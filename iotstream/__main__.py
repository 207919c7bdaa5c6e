from iotstream.cli import main

raise SystemExit(main())
