"""Text data sets through Ray Data: readers of the shipped formats, SentencePiece trained
once on a sample, documents encoded in parallel and cached as int32 token ids; and the
batching that training loops use, which needs no Ray. One module a job:

- ``readers``: the shipped formats -> TextSource: IMDb's ``aclImdb/`` (one review a file),
  WikiText-103's ``wiki.{train,valid,test}.tokens`` (articles start at lines `` = Title = ``)
  and a CSV or parquet table with a text column and an optional label column;
- ``documents``: a source's documents as cleaned text (``fixup``), or a DataError for one
  that cannot be used, so that the caller decides: skip or fail;
- ``subwords``: ``train_spm``, SentencePiece trained on a deterministic sample of the
  training documents, cached under the sample's content hash and the parameters;
  ``decode`` and ``normalize`` check round trips;
- ``encoding``: ``tokenize``, every document encoded in Ray Data tasks that each take a
  chunk of documents (a few thousand files, about four chunks per CPU) and load the model
  once, written as parquet (``ids`` list<int32>, ``len`` int32, ``label`` int64) per split
  into the cache. The key hashes the corpus (paths, sizes, mtimes), the model's sha256, the
  parameters and TEXT_VERSION; a hit starts no Ray and reads no document (100,000 files:
  about 0.5 s, nearly all of it listing the folders and one stat call a file);
- ``corpus``: reading it back: ``Ragged`` (a column of token-id lists as ids back to back
  and offsets), ``load_tokens`` (pyarrow, no Ray: a training worker's way) gives
  TokenArrays; ``read_tokens`` a Ray Dataset;
- ``batching``, plain numpy/torch: ``LMStream`` (fastai's LanguageModelLoader, variable
  BPTT), ``sortish_batches`` / ``sorted_batches`` (SortishSampler / SortSampler) and
  ``pad_batch`` (pad first with PAD_ID, as fastai's classifier wants).

Lesson 10 replaced torchtext with fastai.text because torchtext tokenized in one process
and redid all of it on every run; here the work is parallel and cached.

Special ids (fastai's convention, pad = 1), the same in every model this package trains:

    UNK_ID = 0  <unk>   a piece outside the vocabulary (decodes to " ⁇ ")
    PAD_ID = 1  <pad>   padding only; never inside a document
    BOS_ID = 2  <s>     starts every document (tokenize writes [BOS] + pieces)
    EOS_ID = 3  </s>    ends every document only with add_eos=True

Splits: IMDb train/ -> "train", test/ -> "valid", train/unsup/ -> "unsup" (label -1, for
the language model only); WikiText "train", "valid", "test" (label -1); a table names its
own (one file per split). Labels: IMDb neg = 0, pos = 1.

Text is cleaned as lesson 10 did (``fixup``: ``<br />`` to a newline, HTML entities,
WikiText's `` @-@ `` joins); a model trained with case "markers" lower-cases capitalised and
all-capital words behind ``xxmaj`` / ``xxup`` pieces (``documents.mark_case``, lesson 10's
rule; decode gives the case back); SentencePiece's "identity" normalisation keeps every
character but folds newlines and runs of spaces into one space: ``normalize(text, model)``
is what ``decode(ids, model)`` gives back.
"""

TEXT_VERSION = "text-v1"  # bump when reading, cleaning or encoding changes its output
UNK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"unk": UNK_ID, "pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID}
