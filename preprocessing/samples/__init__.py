"""Generated sample data sets that stand in for the fast.ai Part 2 data offline, one module
per data set, each written in the layout its reader takes and learnable, so that a test can
require a real metric:

    cifar10      fast.ai's CIFAR-10 PNG folders: shapes and textures, one family a class
    imdb         aclImdb/: reviews whose label is the weighted sum of their clauses
    giga_fren    giga-fren line files: questions about numbers, English and French
    pascal       VOCdevkit/VOC2007 and fast.ai's JSON: coloured shapes with boxes
    lsun         LSUN's bedroom/ export tree: rooms with a bed
    horse2zebra  CycleGAN's trainA/ trainB/ testA/ testB/: plain and striped animals
    carvana      train/ and train_masks/: cars and their masks, several views each
    images       an image folder tree of photographs (or pink noise) and a style picture

Production code takes class names from the preprocess manifest, never from here.
"""
