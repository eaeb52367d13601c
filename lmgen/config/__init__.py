"""What a model is: ``ModelConfig`` and its family table, the tensor layout each family implies
(names, shapes, tying), rotary position scaling. Pure definitions; nothing here reads a file
from a stranger (``lmgen.formats`` does) or imports torch."""
