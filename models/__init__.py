"""Pure torch models, one file per family. Imports only torch and torchvision."""
