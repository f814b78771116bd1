"""Conversations answered from the cache, turn by turn, held to a fresh prefill of the same history."""

import pytest
import torch

import lvprune
from lvprune.bench.conversations import (
    Conversation, answer_conversation, conversation_images, first_prompt, load_conversations, score_conversations,
    vision_prefix,
)
from lvprune.families import backbone_for
from lvprune.methods.plphp import PLPHPPress
from lvprune_shapes.reference import load_reference
from lvprune_shapes.reference.cache import SHIPPED_DIR
from lvprune_shapes.world2 import World2Config, make_world2_dataset


@pytest.fixture(scope="module")
def shipped():
    return load_reference(SHIPPED_DIR)


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    # The shipped (first-world) base knows the first world's words: conversations of its questions, 3 turns.
    folder = tmp_path_factory.mktemp("world2")
    paths = make_world2_dataset(folder, {"test": 12}, World2Config(turns=3, tasks=("single",)))
    return load_conversations(paths["test"], folder)


def answers_by_prefill(model, processor, conversation, prompts):
    """Each turn's full prompt (the cached path's ids) prefilled afresh with the images, no cache carried."""
    backbone, tokenizer, answers = backbone_for(model.config), processor.tokenizer, []
    pixels = first_prompt(conversation, conversation_images(conversation), processor, backbone)["pixel_values"]
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids[None]), pixel_values=pixels,
                                 max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id,
                                 suppress_tokens=list(backbone.vision_token_ids(model.config)))
        answers.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    return answers


def test_answers_from_the_cache_equal_a_fresh_prefill_of_the_history(shipped, conversations):
    model, processor = shipped
    said = []
    for conversation in conversations:
        answers, prompts = answer_conversation(model, processor, conversation, return_ids=True)
        assert answers == answers_by_prefill(model, processor, conversation, prompts), conversation.id
        # each turn's prompt is the chat so far: the previous prompt, the answer, the next question
        text = processor.tokenizer.decode(prompts[-1])
        assert all(t["question"] in text for t in conversation.turns) and all(a in text for a in answers[:-1])
        said.append(answers)
    scores = score_conversations(conversations, said)
    assert scores["by_task"]["single"] >= 0.9  # the shipped base answers the first world's questions (94%)


def test_a_press_keeping_every_slot_answers_as_the_stock_model(shipped, conversations):
    model, processor = shipped
    stock = [answer_conversation(model, processor, c) for c in conversations[:4]]
    with lvprune.pruning(model, press=PLPHPPress(r=1.0, delta_r=0.0)):
        kept = [answer_conversation(model, processor, c) for c in conversations[:4]]
        assert model.pruning_stats.kv_cache_fraction == 1.0
    assert kept == stock


def test_a_context_cache_made_before_the_question_answers_as_the_whole_prompt(shipped, conversations):
    """`context=True` prefills the images alone, then the question from that cache: for the stock model the same
    answers as the whole first prompt prefilled; a press acts on the images' prefix only (its unpruned cache is
    the prefix's), and a press keeping every slot changes nothing."""
    model, processor = shipped
    backbone = backbone_for(model.config)
    vision = list(backbone.vision_token_ids(model.config))
    for conversation in conversations[:4]:
        whole, prompts = answer_conversation(model, processor, conversation, return_ids=True)
        answers, context_prompts = answer_conversation(model, processor, conversation, context=True, return_ids=True)
        assert answers == whole and all(map(torch.equal, context_prompts, prompts))
        inputs = first_prompt(conversation, conversation_images(conversation), processor, backbone)
        prefix = vision_prefix(inputs, model)
        ids = inputs["input_ids"][0]
        assert int(ids[prefix - 1]) in vision and not torch.isin(ids[prefix:], torch.tensor(vision)).any()
        with lvprune.pruning(model, press=PLPHPPress(r=1.0, delta_r=0.0, start_layer=0)):
            assert answer_conversation(model, processor, conversation, context=True) == whole
            stats = model.pruning_stats
            assert stats.kv_cache_fraction == 1.0
        with lvprune.pruning(model, press=PLPHPPress(r=1.0, delta_r=0.0, start_layer=0)):
            answer_conversation(model, processor, conversation)
            # bytes per slot are the same, so the unpruned caches are as long as what was prefilled
            assert stats.kv_cache_bytes_unpruned * len(ids) == model.pruning_stats.kv_cache_bytes_unpruned * prefix
        with lvprune.pruning(model, press=PLPHPPress(r=0.25, delta_r=0.0, start_layer=0)):
            answer_conversation(model, processor, conversation, context=True)
            pressed = model.pruning_stats
        text = prefix - int(torch.isin(ids[:prefix], torch.tensor(vision)).sum())
        assert pressed.kv_cache_bytes_unpruned == stats.kv_cache_bytes_unpruned
        assert pressed.kv_cache_fraction == pytest.approx((text + 0.25 * (prefix - text)) / prefix, abs=0.02)


def test_scores_per_task_and_turn():
    conversations = [
        Conversation("a", ("x.png",), ({"task": "list", "question": "q",
                                        "answer": "red in the north, blue in the west"},
                                       {"task": "single", "question": "q2", "answer": "yes"})),
        Conversation("b", ("y.png", "z.png"), ({"task": "which", "question": "q", "answer": "the first"},
                                                {"task": "which", "question": "q2", "answer": "the second"})),
    ]
    predictions = [["red in the north, green in the east", "yes"], ["the first", "the first"]]
    scores = score_conversations(conversations, predictions)
    assert scores["by_task"] == pytest.approx({"list": 2 * 1 / (2 + 2), "single": 1.0, "which": 0.5})
    assert scores["by_turn"] == pytest.approx({1: (0.5 + 1.0) / 2, 2: (1.0 + 0.0) / 2})
    assert scores["overall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    with pytest.raises(ValueError):
        score_conversations(conversations, predictions[:1])


def test_first_world_records_are_refused_naming_the_generator(tmp_path):
    from lvprune_shapes.dataset import make_shapes_dataset

    paths = make_shapes_dataset(tmp_path, {"test": 2})
    with pytest.raises(ValueError, match="make_shapes --world 2"):
        load_conversations(paths["test"], tmp_path)
