"""The HTTP side: routes translate HTTP into one service call each."""
