"""Models by name from the Hugging Face Hub: references (``reference``), which files of a repo
a reference means (``choose``), fetching them into the Hub's own cache (``pull``), and what is
there (``catalog``)."""
