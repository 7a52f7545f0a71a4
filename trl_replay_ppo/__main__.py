import sys

from trl_replay_ppo.cli import main

sys.exit(main())
