"""Stand-ins users can run too: sample videos and fake upstream video APIs."""
